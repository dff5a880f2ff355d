"""gunicorn config for the Procfile's `web` process: `gunicorn --config python:api.gunicorn_conf`.

Reads the service config from $ETCD_BACKUP_CONFIG, so a bad config stops gunicorn at start-up.
"""

from api.server import gunicorn_settings, load_web_config

globals().update(gunicorn_settings(load_web_config()))
wsgi_app = "api.wsgi:app"
