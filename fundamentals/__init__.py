"""fundamentals: the fundamentals of neural-network training, measured.

Modules, one idea each: ``initializers``, ``activations``, ``models``, ``losses``,
``schedules``, ``data`` (with the built-in ``synthetic_fruits`` dataset), ``config`` and
``train``.
"""

__version__ = '0.1.0'
