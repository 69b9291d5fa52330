pytest_plugins = ["tests.integration.fixtures_mqtt"]
