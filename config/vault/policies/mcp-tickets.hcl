# Identity "tickets" (tools/tickets.py): reads its own KV secrets, e.g. the HMAC key that signs
# outgoing ticket notifications. Nothing of any other tool.

path "secret/data/tools/tickets/*" { capabilities = ["read"] }
