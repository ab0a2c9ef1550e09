"""The control plane: the provider client, request signing, epoch acceptance, the state file,
the keystore and the credential."""
