//! The kernel pre-filter's walks (`nprot_common::prefilter::judge`, the code the eBPF
//! program runs) on arbitrary first client bytes: never a panic, and an allowed judgement
//! covers bytes that are there and carried a name the summary does not hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nprot_common::{
    CAPTURE_SEG_MAX, FAMILY_V4,
    name_hash::hash_name,
    prefilter::{ALLOWED, CANDIDATE, Filter, UNDECIDED, Walk, judge},
};

fuzz_target!(|data: &[u8]| {
    let len = data.len().min(CAPTURE_SEG_MAX);
    let Ok(mut d) = Box::<[u8; CAPTURE_SEG_MAX]>::try_from(vec![0u8; CAPTURE_SEG_MAX]) else {
        return;
    };
    d[..len].copy_from_slice(&data[..len]);
    let mut filter = Filter::default();
    filter.add(hash_name("blocked.example"));
    filter.add_net(FAMILY_V4, &[0x0000_12c6, 0, 0, 0], 16);
    let mut walk = Walk::default();
    for ech in [false, true] {
        let j = judge(
            &d,
            len as u32,
            &mut walk,
            &filter,
            ech,
            FAMILY_V4,
            &[0x0200_0acb, 0, 0, 0],
        );
        assert!(matches!(j.outcome, ALLOWED | CANDIDATE | UNDECIDED));
        if j.outcome == ALLOWED {
            assert!(
                j.covered != 0,
                "an allowed judgement covers the bytes it read"
            );
            let (start, end) = (walk.name_start as usize, walk.name_end as usize);
            assert!(start < end && end <= len, "the name lies in the bytes");
            let name = &d[start..end];
            assert!(
                !name.eq_ignore_ascii_case(b"blocked.example")
                    && !name.to_ascii_lowercase().ends_with(b".blocked.example"),
                "a name the summary holds is never allowed: {:?}",
                String::from_utf8_lossy(name)
            );
        }
    }
});
