use super::*;
use crate::Dtype;

/// `{'w': _rebuild_tensor_v2(('storage', torch.HalfStorage, '0', 'cpu', 6), 1, (2, 2), (2, 1),
/// False, OrderedDict())}` as Python's pickler writes it (protocol 2).
fn state_dict() -> Vec<u8> {
    let mut p = b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01".to_vec();
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storageq\x03");
    p.extend_from_slice(
        b"ctorch\nHalfStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06K\x06tq\x07Q",
    );
    p.extend_from_slice(b"K\x01K\x02K\x02\x86q\x08K\x02K\x01\x86q\x09\x89");
    p.extend_from_slice(b"ccollections\nOrderedDict\nq\x0a)Rq\x0btq\x0cRq\x0ds.");
    p
}

#[test]
fn reads_a_state_dict() {
    let bytes = state_dict();
    let loaded = load(&bytes).unwrap();
    assert_eq!(loaded.end, bytes.len());
    let Value::Dict(items) = loaded.value else {
        panic!("not a dict")
    };
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].0, Value::Str("w".into()));
    assert_eq!(
        items[0].1,
        Value::Tensor(TensorRef {
            storage: StorageRef {
                dtype: Dtype::F16,
                key: "0".into(),
                numel: 6,
                view_offset: 0,
            },
            offset: 1,
            shape: vec![2, 2],
            strides: vec![2, 1],
        })
    );
}

#[test]
fn every_truncation_fails_cleanly() {
    let bytes = state_dict();
    for cut in 0..bytes.len() {
        assert!(load(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn executing_opcodes_and_unknown_globals_are_refused() {
    // INST (`i`) would instantiate a class by name.
    assert!(matches!(
        load(b"\x80\x02(ios\nsystem\n."),
        Err(PickleError::UnsupportedOpcode { opcode: b'i', .. })
    ));
    assert!(matches!(
        load(b"\x80\x02cos\nsystem\nq\x00."),
        Err(PickleError::UnsupportedGlobal { module, name, .. }) if module == "os" && name == "system"
    ));
    // STACK_GLOBAL goes through the same allow-list.
    assert!(matches!(
        load(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93."),
        Err(PickleError::UnsupportedGlobal { name, .. }) if name == "eval"
    ));
    // An allowed global called with the wrong arguments.
    assert!(load(b"\x80\x02ccollections\nOrderedDict\nK\x01\x85R.").is_err());
    // Persistent ids other than torch storages.
    assert!(load(b"\x80\x02X\x01\x00\x00\x00xQ.").is_err());
}

#[test]
fn malformed_pickles_are_errors() {
    for bad in [
        &b"\x80\x02h\x05."[..],            // memo entry never set
        b"\x80\x02s.",                     // SETITEM on an empty stack
        b"\x80\x02K\x01K\x02u.",           // SETITEMS without MARK
        b"\x80\x02]K\x01s.",               // SETITEM on a list (odd stack)
        b"\x80\x09.",                      // unknown protocol
        b"\x80\x02X\xff\xff\xff\xff",      // string longer than the input
        b"\x80\x02X\x01\x00\x00\x00\xff.", // invalid UTF-8
        b"\x80\x02K\x01",                  // no STOP
    ] {
        assert!(load(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn integers_decode_like_python() {
    let v = |b: &[u8]| load(b).unwrap().value;
    assert_eq!(v(b"\x80\x02J\xff\xff\xff\xff."), Value::Int(-1));
    assert_eq!(v(b"\x80\x02M\xff\xff."), Value::Int(65535));
    assert_eq!(
        v(b"\x80\x02\x8a\x05\x00\x00\x00\x00\x01."),
        Value::Int(1 << 32)
    );
    assert_eq!(v(b"\x80\x02\x8a\x01\xff."), Value::Int(-1));
    assert_eq!(v(b"\x80\x02\x8a\x00."), Value::Int(0));
    assert_eq!(
        v(b"\x80\x02\x8a\x09\x01\x02\x03\x04\x05\x06\x07\x08\x09."),
        Value::BigInt(vec![1, 2, 3, 4, 5, 6, 7, 8, 9])
    );
}

/// A pickle where each level is a tuple of 16 memo copies of the previous one: 16^levels
/// objects when expanded.
fn nested(levels: u8) -> Vec<u8> {
    let mut p = b"\x80\x02(".to_vec();
    p.extend(std::iter::repeat_n(&b"K\x00"[..], 16).flatten());
    p.extend_from_slice(b"tq\x00");
    for level in 1..levels {
        p.push(b'(');
        for _ in 0..16 {
            p.extend_from_slice(&[b'h', level - 1]);
        }
        p.extend_from_slice(&[b't', b'q', level]);
    }
    p.push(b'.');
    p
}

#[test]
fn memo_blow_up_is_bounded() {
    // 16^3 objects fit in the budget; 16^8 do not, and fail without being built.
    let Value::Tuple(t) = load_with_limit(&nested(3), 100_000).unwrap().value else {
        panic!("not a tuple")
    };
    assert_eq!(t.len(), 16);
    assert!(matches!(
        load_with_limit(&nested(8), 100_000),
        Err(PickleError::TooLarge { limit: 100_000 })
    ));
}

#[test]
fn deep_nesting_is_refused() {
    // ) then TUPLE1 a million times: a million nested tuples if accepted.
    let mut p = b"\x80\x02)".to_vec();
    p.extend(std::iter::repeat_n(0x85u8, 1_000_000));
    p.push(b'.');
    assert!(
        matches!(load(&p), Err(PickleError::Malformed { reason, .. }) if reason.contains("nested"))
    );
    // The same through lists and APPEND, and dicts and SETITEM.
    let mut p = b"\x80\x02]".to_vec();
    for _ in 0..200_000 {
        p.extend_from_slice(b"]");
    }
    p.extend(std::iter::repeat_n(b'a', 200_000));
    p.push(b'.');
    assert!(load(&p).is_err());
    let mut p = b"\x80\x02".to_vec();
    for _ in 0..200_000 {
        p.extend_from_slice(b"}K\x00");
    }
    p.extend_from_slice(b"}");
    p.extend(std::iter::repeat_n(b's', 200_000));
    p.push(b'.');
    assert!(load(&p).is_err());
    // Moderate nesting is fine.
    let mut p = b"\x80\x02)".to_vec();
    p.extend(std::iter::repeat_n(0x85u8, 50));
    p.push(b'.');
    assert!(load(&p).is_ok());
}
