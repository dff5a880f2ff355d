"""gunicorn config for the Procfile's `web` process: `gunicorn --config python:api.gunicorn_conf`.

Reads the service config from $ETCD_BACKUP_CONFIG, so a bad config stops gunicorn at start-up.
"""

import os

from api.server import gunicorn_settings
from common.startup import CONFIG_ENV, DEFAULT_CONFIG_PATH, load_web_config

# Workers load the config again (api.wsgi), perhaps after --chdir: give them an absolute path.
os.environ[CONFIG_ENV] = os.path.abspath(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
globals().update(gunicorn_settings(load_web_config()))
wsgi_app = "api.wsgi:app"
