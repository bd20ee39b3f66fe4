"""auditrun: batch evaluation and reporting engine for brain-tumour MRI classifiers.

The pipeline is visible in the package layout (docs/architecture.md):
manifest -> data -> integrity -> training -> evaluation -> explain -> report -> nightly.
"""

from importlib import import_module

__version__ = "0.1.0"


def lazy_exports(package: str, exports: dict[str, str]):
    """A module ``__getattr__`` for a stage package: ``package.name`` imports the stage's module that
    defines ``name`` on first use, so importing one stage (or one module of it) never imports the
    others (TensorFlow among them)."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{module}"), name)

    return __getattr__
