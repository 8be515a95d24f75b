"""Image upload (group 1, command 1): Zephyr's in-RAM upload session over MCUboot's slot 1.

Rules of this file (zephyrproject-rtos/zephyr:subsys/mgmt/mcumgr/grp/img_mgmt/src/img_mgmt.c
`img_mgmt_upload()` and zephyr_img_mgmt.c `img_mgmt_upload_inspect()`):
- A payload that does not decode: `{"rc": 3}`, and the session is kept.
- First chunk (`off == 0`), in order: `off` missing 20, data shorter than a header 22, `len` missing
  21, bad magic 23, `sha` over 32 bytes 24; the same `sha` as the session in progress resumes it
  (reply with the session's offset, nothing written); slot 1 in use 9; `len` over the slot 30; with
  `upgrade`, a version not newer than the running one 27. Then a new session, and slot 1 is erased.
- Later chunks: an offset other than the expected one is dropped and the expected offset returned
  (also with no session, which expects 0); running past `len` is 31.
- Every group error ends the session (resume then starts over), and so does finishing: the last
  reply carries `match` (image check) when the SHA-256 of the written bytes equals `sha`.
"""

import struct
from dataclasses import dataclass
from typing import assert_never

from simulator.device.cbor import RequestMap
from simulator.device.codec import HEADER_SIZE_BYTES, Header
from simulator.device.codes import Group, ImageCommand, ImgErr, MgmtErr, Op
from simulator.device.mcuboot import SECONDARY_SLOT, Mcuboot
from simulator.device.replies import GroupError, MgmtError, Ok, Reply, UploadStarted
from simulator.errors import CborDecodeError
from simulator.image import IMAGE_HEADER_SIZE_BYTES, IMAGE_MAGIC, SHA256_SIZE_BYTES, ImageVersion

_HEADER_MAGIC = struct.Struct("<I")
_HEADER_VERSION = struct.Struct("<BBHI")
_HEADER_VERSION_OFFSET = 20


@dataclass(slots=True)
class UploadSession:
    """`g_img_mgmt_state`: the upload in progress."""

    size_bytes: int
    offset: int
    sha: bytes


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """The fields of an upload request, decoded with zcbor's types."""

    off: int | None
    data: bytes
    size: int | None
    sha: bytes
    upgrade: bool

    @classmethod
    def decode(cls, payload: bytes) -> "UploadRequest":
        """Decode a request payload.

        Raises:
            CborDecodeError: not a map, or a field of the wrong type.
        """
        fields = RequestMap.decode(payload)
        fields.uint("image")
        return cls(
            off=fields.uint("off"),
            data=fields.bstr("data") or b"",
            size=fields.uint("len"),
            sha=fields.bstr("sha") or b"",
            upgrade=bool(fields.boolean("upgrade")),
        )


@dataclass(frozen=True, slots=True)
class _Start:
    size_bytes: int


@dataclass(frozen=True, slots=True)
class _Continue:
    session: UploadSession
    offset: int


@dataclass(frozen=True, slots=True)
class _ReportOffset:
    pass


_Action = _Start | _Continue | _ReportOffset


class ImageUploader:
    """The upload handler and its session."""

    def __init__(
        self, mcuboot: Mcuboot, *, image_check: bool = True, compare_build_number: bool = False
    ) -> None:
        self._mcuboot = mcuboot
        self._image_check = image_check
        self._compare_build_number = compare_build_number
        self.session: UploadSession | None = None

    def reset(self) -> None:
        """`img_mgmt_reset_upload()`: forget the session (a reboot does this too)."""
        self.session = None

    def handle(self, payload: bytes) -> Reply:
        """Handle one upload request."""
        try:
            request = UploadRequest.decode(payload)
        except CborDecodeError:
            return MgmtError(MgmtErr.EINVAL)
        action = self._inspect(request)
        match action:
            case ImgErr():
                self.reset()
                return GroupError(Group.IMAGE, action)
            case _ReportOffset():
                return Ok({"off": self.session.offset if self.session else 0})
            case _Continue(session=session, offset=offset):
                return self._write(session, offset, request.data, ())
            case _Start(size_bytes=size_bytes):
                effects = (UploadStarted(size_bytes),)
                if self._already_uploaded(size_bytes, request.sha):
                    return Ok({"off": size_bytes, "match": True}, effects)
                session = UploadSession(size_bytes, 0, request.sha)
                self.session = session
                self._mcuboot.secondary.erase()
                return self._write(session, 0, request.data, effects)
            case _:
                assert_never(action)

    def _write(
        self, session: UploadSession, offset: int, data: bytes, effects: tuple[UploadStarted, ...]
    ) -> Reply:
        last = False
        if data:
            last = session.offset + len(data) == session.size_bytes
            if not self._mcuboot.secondary.write(offset, data):
                self.reset()
                return GroupError(Group.IMAGE, ImgErr.FLASH_WRITE_FAILED, effects)
            session.offset += len(data)
        fields: dict[str, int | bool] = {"off": session.offset}
        if last and self._image_check:
            fields["match"] = self._mcuboot.secondary.digest_matches(session.size_bytes, session.sha)
        if session.offset == session.size_bytes:
            self.reset()
        return Ok(fields, effects)

    def _already_uploaded(self, size_bytes: int, sha: bytes) -> bool:
        return (
            self._image_check
            and len(sha) == SHA256_SIZE_BYTES
            and self._mcuboot.secondary.written_bytes >= size_bytes
            and self._mcuboot.secondary.digest_matches(size_bytes, sha)
        )

    def _inspect(self, request: UploadRequest) -> ImgErr | _Action:  # noqa: PLR0911 - Zephyr's checks, in order
        if request.off is None:
            return ImgErr.INVALID_OFFSET
        if request.off != 0:
            session = self.session
            if session is None or request.off != session.offset:
                return _ReportOffset()
            if request.off + len(request.data) > session.size_bytes:
                return ImgErr.INVALID_IMAGE_DATA_OVERRUN
            return _Continue(session, request.off)
        if len(request.data) < IMAGE_HEADER_SIZE_BYTES:
            return ImgErr.INVALID_IMAGE_HEADER
        if request.size is None:
            return ImgErr.INVALID_LENGTH
        if _HEADER_MAGIC.unpack_from(request.data)[0] != IMAGE_MAGIC:
            return ImgErr.INVALID_IMAGE_HEADER_MAGIC
        if len(request.sha) > SHA256_SIZE_BYTES:
            return ImgErr.INVALID_HASH
        if request.sha and self.session is not None and self.session.sha == request.sha:
            return _ReportOffset()
        if self._mcuboot.slot_in_use(SECONDARY_SLOT):
            return ImgErr.NO_FREE_SLOT
        if request.size > self._mcuboot.secondary.size_bytes:
            return ImgErr.INVALID_IMAGE_TOO_LARGE
        if request.upgrade and not self._is_upgrade(request.data):
            return (
                ImgErr.CURRENT_VERSION_IS_NEWER
                if self._mcuboot.primary.image()
                else ImgErr.VERSION_GET_FAILED
            )
        return _Start(request.size)

    def _is_upgrade(self, header: bytes) -> bool:
        running = self._mcuboot.primary.image()
        if running is None:
            return False
        offered = ImageVersion(*_HEADER_VERSION.unpack_from(header, _HEADER_VERSION_OFFSET))
        current = running.version_parts
        if self._compare_build_number:
            return offered > current
        return offered.release > current.release


def upload_offset(frame: bytes) -> int | None:
    """The `off` of the image upload request a frame starts with, or None for any other frame."""
    if len(frame) < HEADER_SIZE_BYTES:
        return None
    header = Header.parse(frame)
    if (header.group, header.command_id, header.op) != (Group.IMAGE, ImageCommand.UPLOAD, Op.WRITE):
        return None
    try:
        return RequestMap.decode(frame[HEADER_SIZE_BYTES : HEADER_SIZE_BYTES + header.length]).uint("off")
    except CborDecodeError:
        return None
