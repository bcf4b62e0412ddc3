"""Built-in benchmark tasks. Importing this package registers them under their lmms-eval names."""

from vistune.eval.tasks import (  # noqa: F401  (imported for registration)
    cmmmu,
    docs,
    mathvista,
    mcq,
    mme,
    mmmu,
    ocrbench,
    pope,
    synthdog,
    synthetic,
    vqa,
)

try:  # LLM-judged tasks live in their own module, which may land independently
    from vistune.eval.tasks import judged  # noqa: F401
except ModuleNotFoundError as exc:
    if exc.name != "vistune.eval.tasks.judged":
        raise
