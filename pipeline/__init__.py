"""genmocap: folders of video -> world-frame SMPL-X motion and production files.

``pipeline`` is the orchestrator-agnostic glue: config, clip discovery, artifact store, model registry, run
report and CLI. It imports ``stages`` and ``models``, never ``flows``.
"""

__version__ = "0.1.0"
