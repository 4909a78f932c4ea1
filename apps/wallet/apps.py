from django.apps import AppConfig


class WalletConfig(AppConfig):
    name = "apps.wallet"
    label = "wallet"
    verbose_name = "Wallet and credit"

    def ready(self) -> None:
        from allauth.account.signals import email_confirmed, user_signed_up

        # Registers the tasks in every process (web, worker, beat, embedded scheduler); Celery's
        # autodiscovery alone is lazy and the embedded scheduler looks tasks up by name.
        from . import signals, tasks  # noqa: F401

        email_confirmed.connect(
            signals.grant_trial_on_email_confirmed, dispatch_uid="wallet.trial.email_confirmed"
        )
        user_signed_up.connect(
            signals.grant_trial_on_verified_signup, dispatch_uid="wallet.trial.signed_up"
        )
