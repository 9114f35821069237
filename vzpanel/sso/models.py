from django.conf import settings
from django.db import models


class SSOIdentity(models.Model):
    """The link between a panel user and the directory or provider account that created it.

    A user without one is a local account: single sign-on never signs anyone in as it.
    """

    class Source(models.TextChoices):
        LDAP = "ldap", "LDAP"
        OIDC = "oidc", "OpenID Connect"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identity")
    source = models.CharField(max_length=8, choices=Source.choices)
    # LDAP: the user name, lower case; OIDC: "<issuer> <sub>", the only stable key the provider gives.
    subject = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)
    last_sign_in = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "single sign-on identity"
        verbose_name_plural = "single sign-on identities"
        constraints = [models.UniqueConstraint(fields=["source", "subject"], name="sso_identity_unique_subject")]

    def __str__(self):
        return f"{self.get_source_display()} {self.subject}"
