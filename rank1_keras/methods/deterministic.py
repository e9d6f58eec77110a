"""One plain network: the baseline every other method is measured against."""

from rank1_keras.methods.spec import MethodSpec, register_method


class Deterministic(MethodSpec):
    """The plain model as the user built it: one pass, no members."""

    name = "deterministic"

    def build(self, build_plain, settings):
        return [build_plain()]


register_method(Deterministic())
