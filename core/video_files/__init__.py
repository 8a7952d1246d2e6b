"""Video files as the video and robotics domains read them: probing (frames, timestamps,
rotation, which decoder), decoding frames at a sample's size (decord, PyAV, pydicom), and
writing them with real encoders (PyAV, pydicom) for the embedded samples and the tests."""
