# The MCP server's own token (AppRole "mcp-server"). Its only right is to mint the child token of
# each identity through that identity's token role, and to manage its own token's lifetime.
# Revoking its own token at shutdown revokes every child token with it.
# It cannot read any secret or use any key: the children can, each only its own.
# Adding a tool identity X: add config/vault/policies/mcp-X.hcl and one line here.

path "auth/token/create/mcp-settings" { capabilities = ["update"] }
path "auth/token/create/mcp-tickets"  { capabilities = ["update"] }
path "auth/token/create/mcp-accounts" { capabilities = ["update"] }

path "auth/token/renew-self"  { capabilities = ["update"] }
path "auth/token/revoke-self" { capabilities = ["update"] }
