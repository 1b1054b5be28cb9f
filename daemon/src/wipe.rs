//! Leaving no secret behind in freed memory or on a thread's stack.
//!
//! Keys are held in types that wipe themselves, but decrypted documents, redb's page
//! cache, request bodies carrying a passphrase and the buffers of every library hearthd
//! uses are ordinary heap memory. [`WipeOnFree`], hearthd's global allocator, overwrites
//! every block with zeros before giving it back, so what a locked daemon has dropped is
//! gone from its memory, not just unreferenced. [`scrub_stack`] does the same for the
//! part of a thread's stack that key derivations and decryption ran in.

use std::alloc::{GlobalAlloc, Layout, System};

/// The system allocator, wiping each block before it is freed or moved by `realloc`.
pub struct WipeOnFree;

/// Writes zeros over `len` bytes at `ptr` in a way the compiler may not remove as dead
/// stores before a `free`: the empty `asm!` block takes the pointer and may read memory.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn wipe(ptr: *mut u8, len: usize) {
    // SAFETY: the caller guarantees `ptr..ptr+len` is writable.
    unsafe { std::ptr::write_bytes(ptr, 0, len) };
    // SAFETY: an empty instruction sequence; it only makes the zeros observable.
    unsafe { std::arch::asm!("/* {0} */", in(reg) ptr, options(nostack, preserves_flags)) };
}

// SAFETY: every method forwards to `System` with the same layouts; blocks are only
// written (zeroed) while still owned, before being freed.
unsafe impl GlobalAlloc for WipeOnFree {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is a live block of `layout.size()` bytes from this allocator.
        unsafe {
            wipe(ptr, layout.size());
            System.dealloc(ptr, layout);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Never let the system move a block (leaving its old copy unwiped): allocate,
        // copy, wipe and free the old one ourselves.
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a fresh allocation of a valid, non-zero-sized layout.
        let new = unsafe { System.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live and at least `min(old, new)` bytes long, and
            // distinct allocations do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

/// How much of the stack [`scrub_stack`] overwrites: well beyond the deepest call chain
/// that handles a key (a tokio worker's stack is 2 MiB).
const SCRUB_BYTES: usize = 512 * 1024;

/// Overwrites the stack below the caller with zeros, so that keys left in the frames of
/// functions that already returned (key derivation, decryption) do not outlive them. Call
/// it at a shallow point after such work, and when a thread that did it ends.
#[inline(never)]
pub fn scrub_stack() {
    let mut area = [0u8; SCRUB_BYTES];
    // SAFETY: `area` is a local array of exactly `SCRUB_BYTES` bytes.
    unsafe { wipe(area.as_mut_ptr(), SCRUB_BYTES) };
    std::hint::black_box(&mut area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_come_back_usable_and_realloc_keeps_contents() {
        let a = WipeOnFree;
        let layout = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: valid layouts; every pointer is used within its block and freed once.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            for i in 0..64 {
                *p.add(i) = i as u8;
            }
            let q = a.realloc(p, layout, 4096);
            assert!(!q.is_null());
            assert!((0..64).all(|i| *q.add(i) == i as u8));
            let q2 = a.realloc(q, Layout::from_size_align(4096, 8).unwrap(), 16);
            assert!((0..16).all(|i| *q2.add(i) == i as u8));
            a.dealloc(q2, Layout::from_size_align(16, 8).unwrap());
            let z = a.alloc_zeroed(layout);
            assert!((0..64).all(|i| *z.add(i) == 0));
            a.dealloc(z, layout);
        }
    }

    #[test]
    fn scrubbing_the_stack_returns() {
        scrub_stack();
    }
}
