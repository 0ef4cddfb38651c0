//! mla_rt::fuzz_targets::chat_template on every input (its result, Ok or an error, is ignored:
//! only a panic that escapes it, a hang or a huge allocation is a finding).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mla_rt_fuzz::panics_unwind();
    let _ = mla_rt::fuzz_targets::chat_template(mla_rt_fuzz::scratch(), data);
});
