"""WireGuard keys: parsing, generation, derivation, redaction and key files."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.unit.builders import iface
from wgkube.desired.model import DeviceSpec
from wgkube.diff.model import ConfigureDevice, UpsertPeer
from wgkube.domain.errors import InvalidInput, InvalidKey, KeyFileError
from wgkube.domain.keys import (
    KEY_LEN,
    PresharedKey,
    PrivateKey,
    PublicKey,
    load_private_key,
    write_private_key,
)

RAW = bytes(range(1, 33))
B64 = base64.b64encode(RAW).decode()  # "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="

# RFC 7748 section 6.1 (X25519 Diffie-Hellman test vectors); `wg pubkey` agrees:
#   echo dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo= | wg pubkey
#   -> hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=
RFC7748_VECTORS = [
    pytest.param(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
        id="alice",
    ),
    pytest.param(
        "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
        id="bob",
    ),
]

KEY_CLASSES = [
    pytest.param(PublicKey, id="public"),
    pytest.param(PrivateKey, id="private"),
    pytest.param(PresharedKey, id="preshared"),
]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def secret_spellings(raw: bytes) -> list[str]:
    return [b64(raw), raw.hex(), raw.hex().upper(), base64.urlsafe_b64encode(raw).decode()]


# -- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", KEY_CLASSES)
def test_a_key_parses_from_44_characters_of_standard_base64(cls: type[PublicKey]) -> None:
    key = cls.parse(B64)
    assert key.raw == RAW
    assert key.b64 == B64


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(B64 + "\n", id="trailing-newline"),
        pytest.param("  " + B64 + "  ", id="spaces-around"),
        pytest.param("\t" + B64 + "\r\n", id="tab-and-crlf"),
    ],
)
def test_whitespace_around_a_key_is_ignored(text: str) -> None:
    assert PublicKey.parse(text).raw == RAW


INVALID_KEYS = [
    pytest.param("", "empty", id="empty"),
    pytest.param("   \n", "empty", id="only-whitespace"),
    pytest.param(b64(bytes(31)), "31 bytes", id="31-bytes"),
    pytest.param(b64(bytes(33)), "44 characters", id="33-bytes"),
    pytest.param(b64(bytes(16)), "44 characters", id="16-bytes"),
    pytest.param(b64(bytes(64)), "44 characters", id="64-bytes"),
    pytest.param(B64[:-1], "44 characters", id="padding-missing"),
    pytest.param(B64 + "=", "44 characters", id="extra-padding"),
    pytest.param(B64[:20] + "!" + B64[21:], "not valid base64", id="bang-inside"),
    pytest.param(B64[:20] + " " + B64[21:], "not valid base64", id="space-inside"),
    pytest.param(B64[:20] + "é" + B64[21:], "not valid base64", id="non-ascii"),
    pytest.param(B64[:20] + "=" + B64[21:], "not valid base64", id="padding-inside"),
    pytest.param(
        base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(), "not valid base64", id="urlsafe"
    ),
    pytest.param(RAW.hex(), "44 characters", id="hex"),
    pytest.param(B64[:-2] + "B=", "not canonical", id="unused-bits-set"),
]


@pytest.mark.parametrize("cls", KEY_CLASSES)
@pytest.mark.parametrize(("text", "fault"), INVALID_KEYS)
def test_a_malformed_key_is_refused_with_the_fault_named(
    cls: type[PublicKey], text: str, fault: str
) -> None:
    with pytest.raises(InvalidKey, match=fault):
        cls.parse(text)


def test_a_key_error_is_invalid_input_and_a_value_error() -> None:
    with pytest.raises(InvalidKey) as info:
        PublicKey.parse("nope")
    assert isinstance(info.value, InvalidInput)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("cls", "what"),
    [
        pytest.param(PublicKey, "public key", id="public"),
        pytest.param(PrivateKey, "private key", id="private"),
        pytest.param(PresharedKey, "preshared key", id="preshared"),
    ],
)
def test_the_message_says_which_kind_of_key_is_wrong(cls: type[PublicKey], what: str) -> None:
    with pytest.raises(InvalidKey, match=f"^{what} "):
        cls.parse("short")


@pytest.mark.parametrize("cls", KEY_CLASSES)
@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_a_key_made_from_other_than_32_bytes_is_refused(cls: type[PublicKey], length: int) -> None:
    with pytest.raises(InvalidKey, match=f"got {length}"):
        cls(bytes(length))


def test_a_public_key_shows_as_base64_and_shortens_to_8_characters() -> None:
    key = PublicKey(RAW)
    assert str(key) == B64
    assert repr(key) == f"PublicKey({B64!r})"
    assert key.short() == B64[:8] + "…"


def test_public_keys_are_hashable_and_sort_by_their_bytes() -> None:
    low, high = PublicKey(bytes(32)), PublicKey(b"\x01" + bytes(31))
    assert sorted([high, low]) == [low, high]
    assert {PublicKey.parse(B64), PublicKey(RAW)} == {PublicKey(RAW)}


# -- generation and derivation ---------------------------------------------------------------


def test_generated_private_keys_are_clamped_and_distinct() -> None:
    keys = [PrivateKey.generate() for _ in range(64)]
    assert len({k.raw for k in keys}) == len(keys)
    for key in keys:
        assert len(key.raw) == KEY_LEN
        assert key.raw[0] & 0b0000_0111 == 0
        assert key.raw[31] & 0b1000_0000 == 0
        assert key.raw[31] & 0b0100_0000 == 0b0100_0000
        assert key.clamped() == key


@pytest.mark.parametrize(
    ("raw", "first", "last"),
    [
        pytest.param(b"\xff" * 32, 0xF8, 0x7F, id="all-ones"),
        pytest.param(bytes(32), 0x00, 0x40, id="all-zeros"),
    ],
)
def test_clamping_clears_the_low_3_bits_and_the_top_bit_and_sets_bit_254(
    raw: bytes, first: int, last: int
) -> None:
    clamped = PrivateKey(raw).clamped()
    assert (clamped.raw[0], clamped.raw[31]) == (first, last)
    assert clamped.raw[1:31] == raw[1:31]
    assert clamped.clamped() == clamped


@pytest.mark.parametrize(("private_hex", "public_hex"), RFC7748_VECTORS)
def test_the_public_key_matches_the_rfc_7748_vector(private_hex: str, public_hex: str) -> None:
    key = PrivateKey(bytes.fromhex(private_hex))
    assert key.public_key() == PublicKey(bytes.fromhex(public_hex))


def test_the_public_key_matches_what_wg_pubkey_printed() -> None:
    key = PrivateKey.parse("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=")
    assert key.public_key().b64 == "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools (wg) is not installed")
def test_the_public_key_of_a_generated_key_matches_wg_pubkey() -> None:
    for _ in range(3):
        key = PrivateKey.generate()
        out = subprocess.run(
            ["wg", "pubkey"], input=key.b64 + "\n", capture_output=True, text=True, check=True
        )
        assert key.public_key().b64 == out.stdout.strip()


def test_an_unclamped_key_has_the_same_public_key_as_its_clamped_form() -> None:
    key = PrivateKey(b"\xff" * 32)
    assert key.public_key() == key.clamped().public_key()


# -- redaction ---------------------------------------------------------------------------------


def test_a_private_key_never_shows_its_secret() -> None:
    key = PrivateKey(RAW)
    shown = [
        str(key),
        repr(key),
        f"{key}",
        f"{key!r}",
        "%s %r" % (key, key),  # noqa: UP031 - the old formatting path too
        repr(DeviceSpec(name="wg0", private_key=key, addresses=(iface("10.0.0.1/24"),))),
        repr(ConfigureDevice(private_key=key)),
    ]
    for text in shown:
        for secret in secret_spellings(RAW):
            assert secret not in text
    assert key.public_key().b64 in repr(key)


def test_a_preshared_key_never_shows_its_secret() -> None:
    key = PresharedKey(RAW)
    shown = [
        str(key),
        repr(key),
        f"{key}",
        "%s %r" % (key, key),  # noqa: UP031
        repr(UpsertPeer(public_key=PublicKey(bytes(32)), preshared_key=key)),
    ]
    for text in shown:
        for secret in secret_spellings(RAW):
            assert secret not in text
    assert "redacted" in repr(key)


def test_the_all_zero_preshared_key_means_none() -> None:
    assert PresharedKey.zero().is_zero
    assert PresharedKey.zero().raw == bytes(KEY_LEN)
    assert not PresharedKey(RAW).is_zero


# -- key files ---------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_missing_key_file_is_created_with_mode_0600_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "private.key"
    key, created = load_private_key(path, create=True)
    assert created is True
    assert mode(path) == 0o600
    assert path.read_text(encoding="ascii") == key.b64 + "\n"
    assert key.clamped() == key


def test_a_created_key_file_is_written_atomically_leaving_no_temporary_file(
    tmp_path: Path,
) -> None:
    load_private_key(tmp_path / "private.key", create=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private.key"]


def test_the_missing_directory_of_a_key_file_is_created_with_mode_0700(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "wg-kube" / "private.key"
    old_umask = os.umask(0o022)
    try:
        load_private_key(path, create=True)
    finally:
        os.umask(old_umask)
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600


def test_a_created_key_is_loaded_back_unchanged_and_not_recreated(tmp_path: Path) -> None:
    path = tmp_path / "private.key"
    first, _ = load_private_key(path, create=True)
    second, created = load_private_key(path, create=True)
    assert (second, created) == (first, False)


def test_an_existing_key_file_is_loaded_without_being_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "private.key"
    path.write_text(B64 + "\n", encoding="ascii")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    key, created = load_private_key(path, create=True)
    assert (key, created) == (PrivateKey(RAW), False)
    assert path.read_text(encoding="ascii") == B64 + "\n"
    assert path.stat().st_mtime_ns == 1_000_000_000


def test_write_private_key_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "private.key"
    path.write_text("old\n")
    write_private_key(path, PrivateKey(RAW))
    assert path.read_text(encoding="ascii") == B64 + "\n"
    assert mode(path) == 0o600


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not a key\n", id="words"),
        pytest.param(b64(bytes(31)).encode(), id="31-bytes"),
        pytest.param((B64 + B64).encode(), id="two-keys-glued"),
        pytest.param(f"{B64}\n{B64}\n".encode(), id="two-lines"),
    ],
)
@pytest.mark.parametrize("create", [True, False], ids=["create", "no-create"])
def test_a_malformed_key_file_is_an_error_naming_the_path_and_is_never_replaced(
    tmp_path: Path, content: bytes, create: bool
) -> None:
    path = tmp_path / "private.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match="malformed") as info:
        load_private_key(path, create=create)
    assert str(path) in str(info.value)
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\xff\xfe" + B64.encode(), id="invalid-utf8"),
        pytest.param(B64.encode()[:-2] + "é=".encode(), id="non-ascii"),
    ],
)
def test_a_key_file_that_is_not_text_is_an_error_naming_the_path(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "private.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match="cannot be read") as info:
        load_private_key(path, create=True)
    assert str(path) in str(info.value)
    assert path.read_bytes() == content


def test_a_key_path_that_is_a_directory_is_an_error_naming_the_path(tmp_path: Path) -> None:
    # Tests run as root, where chmod 000 does not stop a read: a directory does.
    path = tmp_path / "private.key"
    path.mkdir()
    with pytest.raises(KeyFileError, match="cannot be read") as info:
        load_private_key(path, create=True)
    assert str(path) in str(info.value)
    assert path.is_dir()


def test_a_missing_key_file_is_an_error_when_creating_is_not_allowed(tmp_path: Path) -> None:
    path = tmp_path / "private.key"
    with pytest.raises(KeyFileError, match="does not exist") as info:
        load_private_key(path, create=False)
    assert str(path) in str(info.value)
    assert not path.exists()


def test_a_key_file_that_cannot_be_created_is_an_error_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = blocker / "private.key"
    with pytest.raises(KeyFileError) as info:
        write_private_key(path, PrivateKey(RAW))
    assert str(path) in str(info.value)
    assert blocker.read_text() == ""
