// A Pub/Sub-triggered function: receives each message published to `messages` as a
// CloudEvent (google.cloud.pubsub.topic.v1.messagePublished) and logs it. The message's
// data arrives base64-encoded, as Pub/Sub's push format carries it.
exports.on_message_node = (cloudEvent) => {
  const message = cloudEvent.data.message;
  const text = Buffer.from(message.data || '', 'base64').toString();
  console.log(`message ${message.messageId}: ${text}`);
};
