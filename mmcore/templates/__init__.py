"""Templates of ``mmcore new-plugin`` (see :mod:`mmcore.scaffold`); package data, not code.

``common/`` holds the files every plugin gets, ``encoder/``, ``fusion/`` and ``head/`` the
component of each kind. Files end in ``.tmpl`` and use :class:`string.Template`
placeholders (``$name``, ``$package``, ``$Class``...).
"""
