"""Single sign-on: LDAP and OpenID Connect sign-in, with directory groups mapped to panel roles."""
