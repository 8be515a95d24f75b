"""MCUboot in swap mode with two slots: the trailer state, the image-state flags and what a boot does.

Rules of this file (mcu-tools/mcuboot:boot/bootutil/include/bootutil/bootutil_public.h and Zephyr's
img_mgmt_state.c):
- The swap type is the bootloader's view of the trailers: NONE (boot slot 0), TEST (swap once, revert
  unless confirmed), PERM (swap for good), REVERT (running an unconfirmed test image).
- The application always runs from slot 0; slot 1 is where uploads go.
- A boot with TEST or PERM first validates slot 1 (header, TLVs, SHA256); an invalid image is erased
  and nothing is swapped. A "bad build" never confirms itself and crashes before it can: after a
  TEST swap the watchdog resets and MCUboot swaps back; after a PERM swap the device is bricked.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from simulator.device.codes import ImgErr
from simulator.errors import ImageFormatError
from simulator.image import ERASED_BYTE, ImageInfo, parse_mcuboot_image, verify_mcuboot_image

PRIMARY_SLOT = 0
SECONDARY_SLOT = 1


class SwapType(IntEnum):
    """`BOOT_SWAP_TYPE_*`: what MCUboot will do at the next boot."""

    NONE = 1
    TEST = 2
    PERM = 3
    REVERT = 4


class NextBoot(StrEnum):
    """`img_mgmt_next_boot_type`: how the next boot is reported to mcumgr."""

    NORMAL = "normal"
    TEST = "test"
    REVERT = "revert"


class BootOutcome(StrEnum):
    """What a boot did."""

    NORMAL = "normal"
    """Nothing scheduled: slot 0 booted."""
    SWAPPED = "swapped"
    """TEST or PERM: slot 1's image now runs from slot 0."""
    REVERTED = "reverted"
    """An unconfirmed test image was swapped back out."""
    BAD_BUILD_REVERTED = "bad_build_reverted"
    """The test image never came up; MCUboot swapped the previous image back."""
    SECONDARY_INVALID = "secondary_invalid"
    """Slot 1 failed validation and was erased; slot 0 booted."""
    BRICKED = "bricked"
    """A bad build was installed permanently: nothing answers any more."""


@dataclass(frozen=True, slots=True)
class SlotFlags:
    """The five flags image state reports for a slot."""

    active: bool = False
    pending: bool = False
    confirmed: bool = False
    permanent: bool = False


class FlashSlot:
    """One image slot: the bytes written since its last erase (the rest reads as erased)."""

    def __init__(self, size_bytes: int, content: bytes = b"") -> None:
        self.size_bytes = size_bytes
        self._content: bytes | bytearray = content
        self._info: ImageInfo | None = None
        self._info_valid = False

    @property
    def content(self) -> bytes:
        """A copy of the written bytes."""
        return bytes(self._content)

    @property
    def written_bytes(self) -> int:
        """How many bytes from the start of the slot hold data."""
        return len(self._content)

    def image(self) -> ImageInfo | None:
        """The image in the slot as img_mgmt reads it, or None (no magic, no TLVs, no hash)."""
        if not self._info_valid:
            try:
                self._info = parse_mcuboot_image(self._content)
            except ImageFormatError:
                self._info = None
            self._info_valid = True
        return self._info

    def is_erased(self) -> bool:
        """Whether every byte reads as erased."""
        return not self._content.strip(bytes([ERASED_BYTE]))

    def erase(self) -> None:
        """Erase the whole slot."""
        self._set(b"")

    def write(self, offset: int, data: bytes) -> bool:
        """Write at `offset`; False (nothing written) when it would run past the slot."""
        if offset + len(data) > self.size_bytes:
            return False
        content = self._content if isinstance(self._content, bytearray) else bytearray(self._content)
        if offset > len(content):
            content += bytes([ERASED_BYTE]) * (offset - len(content))
        content[offset : offset + len(data)] = data
        self._set(content)
        return True

    def digest_matches(self, size_bytes: int, sha256: bytes) -> bool:
        """Whether the first `size_bytes` hash to `sha256` (flash_img_check)."""
        return hashlib.sha256(bytes(self._content[:size_bytes])).digest() == sha256

    def verified(self) -> bool:
        """Whether the slot holds an image whose SHA256 TLV matches its bytes (MCUboot's check)."""
        return verify_mcuboot_image(self._content)

    def exchange(self, other: "FlashSlot") -> None:
        """Swap contents with `other` (what MCUboot's swap does, sector by sector)."""
        mine, theirs = self._content, other._content
        self._set(theirs)
        other._set(mine)

    def _set(self, content: bytes | bytearray) -> None:
        self._content = content
        self._info_valid = False


class Mcuboot:
    """The two slots of image 0 and MCUboot's trailer state."""

    def __init__(self, primary: FlashSlot, secondary: FlashSlot) -> None:
        self.slots = (primary, secondary)
        self.swap_type = SwapType.NONE

    @property
    def primary(self) -> FlashSlot:
        """Slot 0, where the application runs."""
        return self.slots[PRIMARY_SLOT]

    @property
    def secondary(self) -> FlashSlot:
        """Slot 1, where uploads go."""
        return self.slots[SECONDARY_SLOT]

    def next_boot(self) -> tuple[int, NextBoot]:
        """`img_mgmt_get_next_boot_slot()`: the slot that boots next and how."""
        match self.swap_type:
            case SwapType.NONE:
                return PRIMARY_SLOT, NextBoot.NORMAL
            case SwapType.PERM:
                return SECONDARY_SLOT, NextBoot.NORMAL
            case SwapType.REVERT:
                return SECONDARY_SLOT, NextBoot.REVERT
            case SwapType.TEST:
                return SECONDARY_SLOT, NextBoot.TEST

    def flags(self) -> tuple[SlotFlags, SlotFlags]:
        """The flags image state reports for slots 0 and 1 (`img_mgmt_state_read()`)."""
        next_slot, kind = self.next_boot()
        primary = SlotFlags(active=True, confirmed=kind is not NextBoot.REVERT)
        secondary = SlotFlags()
        if next_slot != PRIMARY_SLOT:
            if kind is NextBoot.NORMAL:
                secondary = SlotFlags(pending=True, permanent=True)
            elif kind is NextBoot.REVERT:
                secondary = SlotFlags(confirmed=True)
            else:
                secondary = SlotFlags(pending=True)
        return primary, secondary

    def slot_in_use(self, slot: int) -> bool:
        """`img_mgmt_slot_in_use()`: the running slot, a pending slot or a revert target."""
        next_slot, kind = self.next_boot()
        if slot == next_slot and kind is not NextBoot.NORMAL:
            return True
        if next_slot != PRIMARY_SLOT and kind is NextBoot.NORMAL:
            return True
        return slot == PRIMARY_SLOT

    def find_by_hash(self, image_hash: bytes) -> int | None:
        """The slot whose image has this SHA256 TLV."""
        for index, slot in enumerate(self.slots):
            info = slot.image()
            if info is not None and info.hash_sha256 == image_hash:
                return index
        return None

    def set_next_boot_slot(self, slot: int, *, confirm: bool) -> ImgErr:  # noqa: PLR0911 - one per Zephyr rule
        """`img_mgmt_set_next_boot_slot()`: test or confirm `slot`; OK or the group error."""
        next_slot, kind = self.next_boot()
        if not confirm and slot == PRIMARY_SLOT:
            return ImgErr.IMAGE_SETTING_TEST_TO_ACTIVE_DENIED
        if kind is NextBoot.TEST:
            return ImgErr.OK if not confirm and slot == next_slot else ImgErr.IMAGE_ALREADY_PENDING
        if kind is NextBoot.NORMAL:
            if confirm and slot == next_slot:
                return ImgErr.OK
            if (slot == PRIMARY_SLOT and next_slot != PRIMARY_SLOT) or (not confirm and slot == next_slot):
                return ImgErr.IMAGE_ALREADY_PENDING
        if kind is NextBoot.REVERT:
            if confirm and slot == next_slot:
                return ImgErr.OK
            if not confirm:
                return ImgErr.IMAGE_ALREADY_PENDING
        if slot == PRIMARY_SLOT:
            self.swap_type = SwapType.NONE  # boot_set_confirmed: the test image stays
        else:
            self.swap_type = SwapType.PERM if confirm else SwapType.TEST
        return ImgErr.OK

    def boot(self, never_comes_up: Callable[[ImageInfo], bool]) -> BootOutcome:
        """Run the bootloader once, as after a reset."""
        match self.swap_type:
            case SwapType.NONE:
                return BootOutcome.NORMAL
            case SwapType.REVERT:
                self.primary.exchange(self.secondary)
                self.swap_type = SwapType.NONE
                return BootOutcome.REVERTED
            case SwapType.TEST | SwapType.PERM:
                return self._swap_in(permanent=self.swap_type is SwapType.PERM, never_comes_up=never_comes_up)

    def _swap_in(self, *, permanent: bool, never_comes_up: Callable[[ImageInfo], bool]) -> BootOutcome:
        if not self.secondary.verified():
            self.secondary.erase()
            self.swap_type = SwapType.NONE
            return BootOutcome.SECONDARY_INVALID
        self.primary.exchange(self.secondary)
        self.swap_type = SwapType.NONE if permanent else SwapType.REVERT
        image = self.primary.image()
        if image is None or not never_comes_up(image):
            return BootOutcome.SWAPPED
        if permanent:
            return BootOutcome.BRICKED
        self.primary.exchange(self.secondary)
        self.swap_type = SwapType.NONE
        return BootOutcome.BAD_BUILD_REVERTED
