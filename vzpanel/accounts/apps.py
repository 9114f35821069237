from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "vzpanel.accounts"
    label = "accounts"
