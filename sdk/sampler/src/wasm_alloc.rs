//! A small global allocator for wasm32: power-of-two size classes with one free list each,
//! carved from memory obtained with `memory.grow`. Freed blocks are reused for requests of
//! the same class; nothing is ever returned to the host (an instance lives for one sequence).

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::null_mut;

/// Size classes 2^4 ..= 2^MAX_CLASS bytes (64 MiB, the default memory limit).
const MAX_CLASS: usize = 26;
const MIN_CLASS: usize = 4;
const PAGE: usize = 65536;

struct State {
    /// Next free byte of the bump region.
    next: usize,
    /// End of the bump region (the end of linear memory when last grown by us).
    end: usize,
    /// Head of each class's free list (0 = empty); a free block stores the next link.
    free: [usize; MAX_CLASS + 1],
}

/// The allocator installed as `#[global_allocator]` on wasm32.
pub struct KilnAlloc(UnsafeCell<State>);

// SAFETY: wasm32 instances are single-threaded.
unsafe impl Sync for KilnAlloc {}

#[global_allocator]
static ALLOC: KilnAlloc = KilnAlloc(UnsafeCell::new(State {
    next: 0,
    end: 0,
    free: [0; MAX_CLASS + 1],
}));

/// The class of a layout, or `None` when too large.
fn class(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_CLASS);
    let size = size.checked_next_power_of_two()?;
    let c = size.trailing_zeros() as usize;
    (c <= MAX_CLASS).then_some(c)
}

impl State {
    /// A fresh block of class `c` from the bump region, growing memory when needed.
    fn bump(&mut self, c: usize) -> *mut u8 {
        let size = 1usize << c;
        let align = size.min(PAGE);
        let mut start = (self.next + align - 1) & !(align - 1);
        if self.end == 0 || start.checked_add(size).is_none_or(|e| e > self.end) {
            let Some(mem_end) = core::arch::wasm32::memory_size(0).checked_mul(PAGE) else {
                return null_mut();
            };
            if mem_end != self.end {
                // First use (or someone else grew memory): start at the current end.
                self.next = mem_end;
                self.end = mem_end;
                start = (mem_end + align - 1) & !(align - 1);
            }
            let Some(need) = start.checked_add(size).map(|e| e - self.end) else {
                return null_mut();
            };
            let pages = need.div_ceil(PAGE);
            if core::arch::wasm32::memory_grow(0, pages) == usize::MAX {
                return null_mut();
            }
            self.end += pages * PAGE;
        }
        self.next = start + size;
        start as *mut u8
    }
}

unsafe impl GlobalAlloc for KilnAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(layout) else {
            return null_mut();
        };
        // SAFETY: single-threaded; the allocator does not re-enter itself.
        let st = unsafe { &mut *self.0.get() };
        let head = st.free[c];
        if head != 0 {
            // SAFETY: a free block holds the address of the next one.
            st.free[c] = unsafe { *(head as *const usize) };
            return head as *mut u8;
        }
        st.bump(c)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(c) = class(layout) else {
            return;
        };
        // SAFETY: single-threaded; `ptr` is a block of class `c` no longer in use, at least
        // 16 bytes long and aligned for a `usize`.
        unsafe {
            let st = &mut *self.0.get();
            *(ptr as *mut usize) = st.free[c];
            st.free[c] = ptr as usize;
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return null_mut();
        };
        if class(layout) == class(new_layout) {
            return ptr;
        }
        // SAFETY: the caller's contract for `realloc`.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}
