"""The WSGI app for gunicorn (see api/gunicorn_conf.py), configured from $ETCD_BACKUP_CONFIG."""

from api import create_app
from common.startup import load_web_config

app = create_app(load_web_config())
