//! [`Packed`]: one MessagePack value carried as its encoded bytes.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer};
use serde::ser::{self, Serialize, Serializer};

use super::Value;

/// One MessagePack value kept as the bytes that encode it: an analyzer's
/// saved state goes from the guest into a snapshot, and from a snapshot
/// back into the guest, without being built into a [`Value`] tree and
/// encoded again.
///
/// On the wire it is the value itself (not a byte string): a message that
/// holds a `Packed` field encodes exactly as if the field were a [`Value`],
/// so records written either way read either way. Serializing walks the
/// bytes once, straight into the serializer (a snapshot record copies
/// them instead: [`super::DeploymentSnapshot::encode`]); deserializing
/// (from MessagePack, JSON or anything serde reads) writes the value as
/// MessagePack.
#[derive(Clone, PartialEq, Eq)]
pub struct Packed(Vec<u8>);

/// MessagePack nil.
const NIL: u8 = 0xc0;

impl Packed {
    /// Nil.
    #[must_use]
    pub fn nil() -> Packed {
        Packed(vec![NIL])
    }

    /// Takes `bytes` if they are exactly one MessagePack value, nothing
    /// after it; the value is walked, not built.
    ///
    /// # Errors
    /// What is wrong with the bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Packed, String> {
        check_one_value(&bytes)?;
        Ok(Packed(bytes))
    }

    /// Encodes `value`.
    ///
    /// # Errors
    /// The value cannot be encoded (it holds an extension type that the
    /// encoder refuses).
    pub fn from_value(value: &Value) -> Result<Packed, String> {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, value).map_err(|e| e.to_string())?;
        Ok(Packed(bytes))
    }

    /// Decodes the value into a tree.
    ///
    /// # Errors
    /// Never for a `Packed` made by this module (its bytes were checked or
    /// written as one value); the message otherwise.
    pub fn to_value(&self) -> Result<Value, String> {
        rmpv::decode::read_value(&mut self.0.as_slice()).map_err(|e| e.to_string())
    }

    /// The encoded value.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether the value is nil.
    #[must_use]
    pub fn is_nil(&self) -> bool {
        self.0 == [NIL]
    }
}

impl Default for Packed {
    fn default() -> Self {
        Packed::nil()
    }
}

impl fmt::Debug for Packed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_value() {
            Ok(v) => write!(f, "Packed({v})"),
            Err(_) => write!(f, "Packed({} bytes, not MessagePack)", self.0.len()),
        }
    }
}

/// Containers a value may nest (the transcoder's MessagePack reader stops
/// at 1,024).
const MAX_DEPTH: usize = 512;

/// Bytes of the length that follows a `str`, `bin`, `array` or `map`
/// marker of the 8, 16 or 32-bit form.
fn length_bytes(marker: rmp::Marker) -> usize {
    use rmp::Marker;
    match marker {
        Marker::Str8 | Marker::Bin8 => 1,
        Marker::Str16 | Marker::Bin16 | Marker::Array16 | Marker::Map16 => 2,
        _ => 4,
    }
}

/// Walks `bytes` once as one value and checks that nothing follows, and
/// that the transcoder will write back the same value: no extension type
/// (it would read one as an array), every string UTF-8 (it would read
/// another as binary), at most [`MAX_DEPTH`] containers deep.
fn check_one_value(bytes: &[u8]) -> Result<(), String> {
    use rmp::Marker;
    let cut = || "not MessagePack: the value ends early".to_string();
    let mut rd = bytes;
    let take = |rd: &mut &[u8], n: usize| -> Result<u64, String> {
        let (head, tail) = rd.split_at_checked(n).ok_or_else(cut)?;
        *rd = tail;
        Ok(head.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
    };
    let skip = |rd: &mut &[u8], n: u64| -> Result<(), String> {
        *rd = usize::try_from(n)
            .ok()
            .and_then(|n| rd.get(n..))
            .ok_or_else(cut)?;
        Ok(())
    };
    let text = |rd: &mut &[u8], n: u64| -> Result<(), String> {
        let s = usize::try_from(n)
            .ok()
            .and_then(|n| rd.get(..n))
            .ok_or_else(cut)?;
        std::str::from_utf8(s).map_err(|e| format!("a string is not UTF-8: {e}"))?;
        skip(rd, n)
    };
    // Values still to read in each open container, the value itself first.
    let mut open: Vec<u64> = vec![1];
    while let Some(left) = open.last_mut() {
        if *left == 0 {
            open.pop();
            continue;
        }
        *left -= 1;
        let marker = rmp::decode::read_marker(&mut rd).map_err(|_| cut())?;
        let items = match marker {
            Marker::FixArray(n) => u64::from(n),
            Marker::FixMap(n) => 2 * u64::from(n),
            Marker::Array16 | Marker::Array32 => take(&mut rd, length_bytes(marker))?,
            Marker::Map16 | Marker::Map32 => 2 * take(&mut rd, length_bytes(marker))?,
            Marker::FixStr(n) => {
                text(&mut rd, u64::from(n))?;
                0
            }
            Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                let n = take(&mut rd, length_bytes(marker))?;
                text(&mut rd, n)?;
                0
            }
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                let n = take(&mut rd, length_bytes(marker))?;
                skip(&mut rd, n)?;
                0
            }
            Marker::U8 | Marker::I8 => skip(&mut rd, 1).map(|()| 0)?,
            Marker::U16 | Marker::I16 => skip(&mut rd, 2).map(|()| 0)?,
            Marker::U32 | Marker::I32 | Marker::F32 => skip(&mut rd, 4).map(|()| 0)?,
            Marker::U64 | Marker::I64 | Marker::F64 => skip(&mut rd, 8).map(|()| 0)?,
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                0
            }
            Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32 => {
                return Err("holds a MessagePack extension type (not supported)".into());
            }
            Marker::Reserved => return Err("not MessagePack: reserved byte 0xc1".into()),
        };
        if items > 0 {
            if open.len() > MAX_DEPTH {
                return Err(format!("nests more than {MAX_DEPTH} arrays and maps deep"));
            }
            open.push(items);
        }
    }
    if !rd.is_empty() {
        return Err(format!("{} bytes follow the value", rd.len()));
    }
    Ok(())
}

impl Serialize for Packed {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut rest = self.0.as_slice();
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        serde_transcode::transcode(&mut de, serializer)
            .map_err(|e| ser::Error::custom(format!("packed value: {e}")))
    }
}

impl<'de> Deserialize<'de> for Packed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut bytes = Vec::new();
        let mut ser = rmp_serde::Serializer::new(&mut bytes);
        serde_transcode::transcode(deserializer, &mut ser).map_err(de::Error::custom)?;
        Ok(Packed(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        Value::Map(vec![
            ("flows".into(), Value::Array(vec![1.into(), (-7).into()])),
            ("name".into(), "a".into()),
            ("bin".into(), Value::Binary(vec![0, 1, 2])),
            ("f".into(), Value::F64(1.5)),
            ("big".into(), Value::from(u64::MAX)),
            ("nil".into(), Value::Nil),
            ("yes".into(), true.into()),
        ])
    }

    #[test]
    fn a_message_with_a_packed_field_encodes_as_with_the_value() {
        #[derive(serde::Serialize)]
        struct Tree {
            a: u32,
            state: Value,
        }
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Bytes {
            a: u32,
            state: Packed,
        }
        let tree = crate::encode(&Tree {
            a: 3,
            state: sample(),
        })
        .unwrap();
        let packed = Bytes {
            a: 3,
            state: Packed::from_value(&sample()).unwrap(),
        };
        assert_eq!(crate::encode(&packed).unwrap(), tree);
        let back: Bytes = crate::decode(&tree).unwrap();
        assert_eq!(back, packed);
        assert_eq!(back.state.to_value().unwrap(), sample());
    }

    #[test]
    fn json_goes_in_and_out_as_the_same_value() {
        let json = r#"{"flows":[1,-7],"name":"a","f":1.5,"nil":null,"yes":true}"#;
        let p: Packed = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), json);
    }

    #[test]
    fn bytes_that_are_not_one_value_are_refused_and_named() {
        let one = Packed::from_value(&sample()).unwrap().as_bytes().to_vec();
        let mut two = one.clone();
        two.push(NIL);
        assert_eq!(
            Packed::from_bytes(two).unwrap_err(),
            "1 bytes follow the value"
        );
        let cut = one[..one.len() - 1].to_vec();
        assert!(
            Packed::from_bytes(cut)
                .unwrap_err()
                .starts_with("not MessagePack")
        );
        assert!(Packed::from_bytes(vec![]).is_err());
        let ext = Value::Array(vec![Value::Ext(1, vec![9])]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &ext).unwrap();
        assert!(Packed::from_bytes(bytes).unwrap_err().contains("extension"));
        // A str that is not UTF-8 would come back as binary: refused.
        assert!(
            Packed::from_bytes(vec![0xa2, 0xff, 0xfe])
                .unwrap_err()
                .contains("not UTF-8")
        );
        let mut deep = vec![0x91; MAX_DEPTH + 1];
        deep.push(NIL);
        assert!(Packed::from_bytes(deep).unwrap_err().contains("deep"));
        let mut ok = vec![0x91; MAX_DEPTH];
        ok.push(NIL);
        // As deep as allowed: the transcoder writes it back unchanged.
        let packed = Packed::from_bytes(ok.clone()).unwrap();
        assert_eq!(crate::encode(&packed).unwrap(), ok);
        assert!(Packed::from_bytes(vec![0xc1]).is_err());
        // Lengths that run past the end.
        assert!(Packed::from_bytes(vec![0xdc, 0x00]).is_err());
        assert!(Packed::from_bytes(vec![0xc4, 0x05, 1]).is_err());
        assert!(Packed::from_bytes(vec![0x92, 1]).is_err());
        // Each width of length: str8 checked for UTF-8, bin16 and map16
        // read whole, str32 cut short.
        assert!(
            Packed::from_bytes(vec![0xd9, 0x02, 0xff, 0xfe])
                .unwrap_err()
                .contains("not UTF-8")
        );
        assert!(Packed::from_bytes(vec![0xc5, 0x00, 0x02, 1, 2]).is_ok());
        assert!(Packed::from_bytes(vec![0xde, 0x00, 0x01, 0x01, 0x02]).is_ok());
        assert!(Packed::from_bytes(vec![0xdb, 0, 0, 0, 5, b'a']).is_err());
        assert_eq!(
            Packed::from_bytes(one).unwrap().to_value().unwrap(),
            sample()
        );
        assert!(Packed::nil().is_nil());
        assert!(Packed::from_bytes(vec![NIL]).unwrap().is_nil());
    }
}
