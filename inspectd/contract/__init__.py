"""The v1 wire contract in one place (design.md, "MQTT contract (v1)"; docs/mqtt.md): the
topics of a station (``topics``), the verdict and its payload and schema (``verdict``), and
every message the station sends (``messages``). It imports nothing of the transport (mqtt/),
the page (ui/) or the outputs, so the outbox, delivery and the tools build messages without
paho (tests/unit/test_import_directions.py)."""
