"""The sans-I/O core: everything here is a pure function of its arguments.

No module in this package performs network, disk or clock access; data sources,
the policy library and "today" are passed in by the edges (``cds_service.hooks``,
``cds_service.cli``).  That keeps the policy logic deterministic and fast to test.
"""
