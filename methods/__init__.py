"""Built-in methods (installed as ``cl_bench.methods``).

Importing this package registers every built-in method; this module list is
the one place that names them. Each module holds one method family's whole logic.
"""

from cl_bench.methods import (  # noqa: F401
    agem,
    bn_adapt,
    bn_ema,
    coda_prompt,
    cotta,
    der,
    dualprompt,
    eata,
    er,
    ewc,
    finetune,
    gem,
    joint,
    l2,
    l2_vit,
    l2p,
    lame,
    lwf,
    mas,
    ncm,
    one_prompt,
    psmt,
    ranpac,
    rdumb,
    rmt,
    sar,
    shot_im,
    si,
    slca,
    source,
    t3a,
    tent,
)
