from django.apps import AppConfig


class OptimizerConfig(AppConfig):
    name = "apps.optimizer"
    label = "optimizer"
