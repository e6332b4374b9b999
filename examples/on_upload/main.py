"""A Storage-triggered function: receives google.cloud.storage.object.v1.finalized for
objects written to the `uploads` bucket and logs their name and size."""

import functions_framework


@functions_framework.cloud_event
def on_upload(event):
    data = event.data
    print(f"new object gs://{data['bucket']}/{data['name']} ({data.get('size')} bytes)")
