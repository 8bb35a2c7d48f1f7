# Identity "accounts" (tools/accounts.py): encrypts and decrypts the PII columns of customer
# accounts (email, phone) with the "accounts" transit key. It cannot read the key itself, rotate
# it, or read any KV secret.

path "transit/encrypt/accounts" { capabilities = ["update"] }
path "transit/decrypt/accounts" { capabilities = ["update"] }
