pytest_plugins = ["tests.integration.fixtures_mqtt", "tests.integration.fixtures_influx"]
