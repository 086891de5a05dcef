"""What the tests share: paths, the daemon as a child process, MQTT clients, brokers, station
configs and waiting. tests/ is on sys.path (pytest's rootdir conftest, prepend import mode), so
every test folder imports these as ``support.<module>``."""
