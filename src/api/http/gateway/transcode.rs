//! Between the gateway's JSON and protobuf, through the descriptors of
//! etcd's messages: the JSON that etcd's grpc-gateway reads and writes
//! (proto field names, 64-bit integers as strings, bytes as base64, enums by
//! name, fields at their default left out).

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

const WRITE: SerializeOptions =
    SerializeOptions::new().use_proto_field_name(true).stringify_64_bit_integers(true).skip_default_fields(true);

/// etcd's gateway ignores fields it does not know.
const READ: DeserializeOptions = DeserializeOptions::new().deny_unknown_fields(false);

pub fn to_json(message: &DynamicMessage, out: &mut Vec<u8>) {
    let mut serializer = serde_json::Serializer::new(out);
    message.serialize_with_options(&mut serializer, &WRITE).expect("a decoded message serializes to JSON");
}

/// One message from JSON; an empty body is the message with every field at
/// its default, as in etcd.
pub fn from_json(descriptor: &MessageDescriptor, json: &[u8]) -> Result<DynamicMessage, String> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(descriptor.clone()));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let message = DynamicMessage::deserialize_with_options(descriptor.clone(), &mut deserializer, &READ)
        .map_err(|e| e.to_string())?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(message)
}

/// The messages of a streaming call's request body: JSON values one after
/// another, each passed on as soon as it is complete. The stream ends with
/// the body, or at the first value that does not parse.
pub fn json_messages<B, E>(descriptor: MessageDescriptor, body: B) -> impl Stream<Item = DynamicMessage> + Send
where
    B: Stream<Item = Result<Bytes, E>> + Send + Unpin,
{
    futures::stream::unfold((body, BytesMut::new()), move |(mut body, mut pending)| {
        let descriptor = descriptor.clone();
        async move {
            loop {
                match complete_value(&pending) {
                    Ok(Some(end)) => {
                        let message = from_json(&descriptor, &pending.split_to(end)).ok()?;
                        return Some((message, (body, pending)));
                    }
                    Ok(None) => pending.extend_from_slice(&body.next().await?.ok()?),
                    Err(_) => return None,
                }
            }
        }
    })
}

/// Where the first JSON value in `pending` ends, if all of it is there.
fn complete_value(pending: &[u8]) -> Result<Option<usize>, serde_json::Error> {
    let mut values = serde_json::Deserializer::from_slice(pending).into_iter::<serde::de::IgnoredAny>();
    match values.next() {
        None => Ok(None),
        Some(Ok(_)) => Ok(Some(values.byte_offset())),
        Some(Err(e)) if e.is_eof() => Ok(None),
        Some(Err(e)) => Err(e),
    }
}

/// A tonic codec for messages known only by their descriptors.
pub struct DynamicCodec {
    pub output: MessageDescriptor,
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder(self.output.clone())
    }
}

pub struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode_raw(dst);
        Ok(())
    }
}

pub struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        DynamicMessage::decode(self.0.clone(), bytes).map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}
