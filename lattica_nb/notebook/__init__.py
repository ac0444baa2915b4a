"""The notebook layer: what runs inside a Jupyter kernel.

``runtime`` is the runtime thread: one daemon thread running one event loop that hosts the
Node, so the mesh keeps going while a cell blocks (``Runtime``, ``get_runtime``). Magics,
widgets and the comm bridge to the JupyterLab extension will live here too; this is the only
layer that may import IPython or ipywidgets (the runtime itself does not). Import submodules
directly, e.g. ``from lattica_nb.notebook.runtime import get_runtime``.
"""
