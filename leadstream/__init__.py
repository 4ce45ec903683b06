"""The composition root: the one place that knows every service.

``leadstream/`` assembles the product from its parts: the ``leadstream`` command
(``leadstream.cli``), the admin commands for API keys and webhook secrets
(``leadstream.admin``), demo seeding (``leadstream.demo``) and the registry of services
and databases (``leadstream.registry``). It imports the services, the pipeline store and
the spine; nothing imports it but the command line, the tests and the benchmarks.

Why a package and not entry points: there is one product, its four services live in
this repository and ship in one wheel, so a plain module that lists them is the
simplest thing that reads well (one file to open to see what exists, no install step
for a change to take effect, no discovery code in the spine). Entry points would pay
off only if services were installed separately.
"""
