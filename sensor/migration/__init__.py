"""Coming from PortSentry: one-shot tools that never run in the sensor daemon.

- :mod:`~sensor.migration.commands`: the ``import-config`` and ``migrate-bans`` commands.
- :mod:`~sensor.migration.translate`: the old portsentry.conf and ignore files translated.
- :mod:`~sensor.migration.leftovers`, :mod:`~sensor.migration.leftover_rules`: the blocks the
  old PortSentry left on the host (records, hosts.deny, routes; iptables and nft rules), as data.
- :mod:`~sensor.migration.banplan`, :mod:`~sensor.migration.banapply`: ``migrate-bans``' plan,
  and carrying it out.
- :mod:`~sensor.migration.hostsystem`: the host behind one interface (tests use a fake one).

``sensor.daemon`` never imports this package (tests/unit/test_imports.py).
"""
