"""What happens to a part after its verdict is recorded, besides MQTT delivery: verdicts.jsonl,
overlay pictures (``overlay`` draws them, ``sinks`` writes and publishes them), the NG archive,
and the best-effort thread (``workers``) the pictures and the archive run on."""
