# Identity "settings": reads the settings-level secrets once at startup
# (fields marked FromVault in server/settings.py).

path "secret/data/mcp/server" { capabilities = ["read"] }
