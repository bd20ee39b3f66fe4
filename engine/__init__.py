"""auditrun: batch evaluation and reporting engine for brain-tumour MRI classifiers.

The pipeline is visible in the package layout:
manifest -> data -> integrity -> train -> evaluate -> explain -> report -> history.
"""

__version__ = "0.1.0"
