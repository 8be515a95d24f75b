"""Image management (group 1): state read and write, upload and erase over the MCUboot model.

Rules of this file (zephyrproject-rtos/zephyr:subsys/mgmt/mcumgr/grp/img_mgmt/src/img_mgmt_state.c
and img_mgmt.c):
- State read lists slots in order, omitting a slot without a valid image; each entry is `slot`,
  `version`, `hash`, then the flags `bootable pending confirmed active permanent` (all of them, or
  only the true ones in a frugal list), then `splitStatus: 0` (not in a frugal list).
- State write: no hash and `confirm` confirms the running image; no hash and no confirm is 24; a
  hash that is not 32 bytes is 24; an unknown hash is 8; MCUboot's rules give 33 and 28. Success
  answers the full state.
- Erase (default slot 1): a valid image in use is 9; otherwise the slot is erased, the upload session
  ends and the reply is empty. Commands 2-4 exist without handlers, so they get rc 8.
"""

from dataclasses import dataclass

from simulator.device.cbor import ReplyValue, RequestMap
from simulator.device.codes import Group, ImageCommand, ImgErr, MgmtErr, Op
from simulator.device.mcuboot import PRIMARY_SLOT, SECONDARY_SLOT, Mcuboot
from simulator.device.replies import FlashErased, GroupError, MgmtError, Ok, Reply
from simulator.device.upload import ImageUploader
from simulator.errors import CborDecodeError
from simulator.image import SHA256_SIZE_BYTES


@dataclass(frozen=True, slots=True)
class SlotState:
    """One entry of image state: what a client sees for a slot holding a valid image."""

    slot: int
    version: str
    hash_sha256: bytes
    bootable: bool
    pending: bool
    confirmed: bool
    active: bool
    permanent: bool


class ImageGroup:
    """The image management handlers of one device."""

    def __init__(self, mcuboot: Mcuboot, uploader: ImageUploader, *, frugal_list: bool = False) -> None:
        self._mcuboot = mcuboot
        self._uploader = uploader
        self._frugal_list = frugal_list

    def handle(self, command_id: int, op: int, payload: bytes) -> Reply | None:
        """Handle one request; None when the command has no handler for `op`."""
        match (command_id, op):
            case (ImageCommand.STATE, Op.READ):
                return Ok(self._state_fields())
            case (ImageCommand.STATE, Op.WRITE):
                return self._state_write(payload)
            case (ImageCommand.UPLOAD, Op.WRITE):
                return self._uploader.handle(payload)
            case (ImageCommand.ERASE, Op.WRITE):
                return self._erase(payload)
        return None

    def slot_states(self) -> list[SlotState]:
        """The image state a state read reports, as values."""
        states = []
        for index, (slot, flags) in enumerate(zip(self._mcuboot.slots, self._mcuboot.flags(), strict=True)):
            info = slot.image()
            if info is None:
                continue
            states.append(
                SlotState(
                    slot=index,
                    version=info.version,
                    hash_sha256=info.hash_sha256,
                    bootable=info.bootable,
                    pending=flags.pending,
                    confirmed=flags.confirmed,
                    active=flags.active,
                    permanent=flags.permanent,
                )
            )
        return states

    def _state_fields(self) -> dict[str, ReplyValue]:
        images: list[ReplyValue] = []
        for state in self.slot_states():
            entry: dict[str, ReplyValue] = {
                "slot": state.slot,
                "version": state.version,
                "hash": state.hash_sha256,
            }
            flags = (
                ("bootable", state.bootable),
                ("pending", state.pending),
                ("confirmed", state.confirmed),
                ("active", state.active),
                ("permanent", state.permanent),
            )
            entry.update((name, value) for name, value in flags if value or not self._frugal_list)
            images.append(entry)
        fields: dict[str, ReplyValue] = {"images": images}
        if not self._frugal_list:
            fields["splitStatus"] = 0
        return fields

    def _state_write(self, payload: bytes) -> Reply:
        try:
            request = RequestMap.decode(payload)
            image_hash = request.bstr("hash") or b""
            confirm = bool(request.boolean("confirm"))
        except CborDecodeError:
            return MgmtError(MgmtErr.EINVAL)
        if not image_hash:
            if not confirm:
                return GroupError(Group.IMAGE, ImgErr.INVALID_HASH)
            slot: int | None = PRIMARY_SLOT
        elif len(image_hash) != SHA256_SIZE_BYTES:
            return GroupError(Group.IMAGE, ImgErr.INVALID_HASH)
        else:
            slot = self._mcuboot.find_by_hash(image_hash)
        if slot is None:
            return GroupError(Group.IMAGE, ImgErr.HASH_NOT_FOUND)
        rc = self._mcuboot.set_next_boot_slot(slot, confirm=confirm)
        if rc is not ImgErr.OK:
            return GroupError(Group.IMAGE, rc)
        return Ok(self._state_fields())

    def _erase(self, payload: bytes) -> Reply:
        try:
            requested = RequestMap.decode(payload).uint("slot")
        except CborDecodeError:
            return MgmtError(MgmtErr.EINVAL)
        index = SECONDARY_SLOT if requested is None else requested
        if index >= len(self._mcuboot.slots):
            self._uploader.reset()
            return GroupError(Group.IMAGE, ImgErr.INVALID_SLOT)
        slot = self._mcuboot.slots[index]
        if slot.image() is not None and self._mcuboot.slot_in_use(index):
            return GroupError(Group.IMAGE, ImgErr.NO_FREE_SLOT)
        slot.erase()
        self._uploader.reset()
        return Ok({}, (FlashErased(slot.size_bytes),))
