"""Personal data of customer accounts: how it is stored and how it is shown.

Contact details (email, phone) are stored only as Vault transit ciphertext (``vault:v<n>:...``),
encrypted and decrypted with the ``accounts`` key by this capability's own Vault identity; no
other identity can decrypt them. Next to each ciphertext the store keeps a masked form
(``b***@acme.example``, ``***0001``), computed when the value is written, so callers who may not
see personal data get the masked form without the plaintext ever being decrypted for them.
"""

from __future__ import annotations

import re
from typing import Final

# The Vault identity and transit key that own account PII.
IDENTITY: Final = "accounts"
KEY: Final = "accounts"
CIPHERTEXT_PREFIX: Final = "vault:v"


def mask_email(email: str) -> str:
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def mask_phone(phone: str) -> str:
    digits = re.sub(r"\D", "", phone)
    return f"***{digits[-4:]}" if len(digits) > 4 else "***"
