"""Pure rule functions of each field (water class, road safety, data-center energy); no I/O.

Imports only devices/, the standard library and pydantic, so any stage may call them.
"""
