"""The app's views, one module each: its layout (``*_panel`` / ``*_view``), its handlers and their wiring.

Handlers are module-level functions of the :class:`~sailscope.ui.jobs.AppContext` and the components' values;
they return or yield ``{output name: value}`` dicts (see :func:`sailscope.ui.widgets.bind`).
"""
