"""The model zoo: CIFAR-sized (32x32 input, most at any size) image classifiers behind one registry,
and the user's own models (archs/user.py) beside them.

    import archs
    archs.names()                          # every registered arch
    model = archs.create("shufflenet_v1", num_classes=10, groups=3, width=0.5)

Each family lives in its own module and registers its builders and knobs on import.
"""

from archs.registry import (Arch, Knob, KnobError, count_flops, count_params, create, create_on_meta,
                            families, get, names, validate)

# Importing a family module registers its archs (names() lists them sorted, whatever this order).
from archs import (  # noqa: E402,F401
    parnet, shufflenet, resnet, resnext, senet, densenet, res2net, resnest, mobilenet,
    efficientnet, alexnet, vgg, googlenet,
)
from archs import registry, user  # noqa: E402,F401  (user: the user's own models, `PATH.py:NAME`)

__all__ = ["Arch", "Knob", "KnobError", "count_flops", "count_params", "create", "create_on_meta",
           "families", "get", "names", "validate"]
