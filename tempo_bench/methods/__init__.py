"""Methods behind one interface (:class:`tempo_bench.methods.base.Method`).

A method registers itself with ``@register_method(name)`` (:mod:`tempo_bench.methods.registry`);
:mod:`tempo_bench.methods.catalog` imports every shipped one and answers lookups. Baselines live in
the repository's baselines/ folder (installed as ``tempo_bench.baselines``), TEMPO in this package.
"""
