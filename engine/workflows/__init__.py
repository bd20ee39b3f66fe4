"""One module per command that runs stages: the order of the stages, what is kept between them
and where each stage's returns are recorded. ``run``: ``auditrun MANIFEST`` (an audit run);
``evaluate``: ``auditrun evaluate`` (a finished run's models on another labelled folder).

A workflow calls stages only through their packages' public names; no stage imports a workflow.
"""
