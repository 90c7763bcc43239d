"""TEST DOUBLE of a camera driver, in its own process: rgb8 frames at a fixed rate, stamped with the wall clock.

    python camera_process.py TOPIC RATE_HZ WIDTH HEIGHT [--depth DEPTH_TOPIC INFO_TOPIC COLOR_INFO_TOPIC] [--jpeg]

With --depth it also publishes an aligned 16UC1 depth image (a box 0.6 m away on a 1.5 m wall) and the
camera_info of both streams with the same stamp, like realsense-ros with align_depth. With --jpeg it publishes
the frame as a JPEG CompressedImage on TOPIC/compressed instead (image_transport's compressed topic). It runs
until killed, printing one line per 50 frames. The Fast DDS profile is whatever its environment says (a test may leave
the package's profile out on purpose).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("topic")
    parser.add_argument("rate", type=float)
    parser.add_argument("width", type=int)
    parser.add_argument("height", type=int)
    parser.add_argument("--depth", nargs=3, metavar=("DEPTH", "INFO", "COLOR_INFO"))
    parser.add_argument("--jpeg", action="store_true", help="publish CompressedImage (JPEG) on TOPIC/compressed")
    args = parser.parse_args()
    rclpy.init()
    node = Node("camera_double")
    image_pub = (
        node.create_publisher(CompressedImage, f"{args.topic}/compressed", qos_profile_sensor_data)
        if args.jpeg
        else node.create_publisher(Image, args.topic, qos_profile_sensor_data)
    )
    w, h = args.width, args.height
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), np.full_like(x, 90)], axis=2).astype(np.uint8)
    jpeg = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() if args.jpeg else b""
    depth = np.full((h, w), 1500, np.uint16)
    depth[h // 4 : h * 3 // 4, w // 4 : w * 3 // 4] = 600
    fx = 0.8 * w
    k = [fx, 0.0, w / 2, 0.0, fx, h / 2, 0.0, 0.0, 1.0]
    if args.depth:
        depth_pub = node.create_publisher(Image, args.depth[0], qos_profile_sensor_data)
        info_pub = node.create_publisher(CameraInfo, args.depth[1], qos_profile_sensor_data)
        colour_info_pub = node.create_publisher(CameraInfo, args.depth[2], qos_profile_sensor_data)
    period, sent, start = 1.0 / args.rate, 0, time.monotonic()
    try:
        while rclpy.ok():
            stamp = node.get_clock().now().to_msg()
            if args.jpeg:
                image = CompressedImage(format="rgb8; jpeg compressed bgr8", data=jpeg)
            else:
                image = Image(height=h, width=w, encoding="rgb8", step=w * 3, data=rgb.tobytes())
            image.header.stamp, image.header.frame_id = stamp, "camera_color_optical_frame"
            image_pub.publish(image)
            if args.depth:
                frame = "camera_color_optical_frame"  # aligned to colour: same frame and intrinsics
                message = Image(height=h, width=w, encoding="16UC1", step=w * 2, data=depth.tobytes())
                message.header.stamp, message.header.frame_id = stamp, frame
                depth_pub.publish(message)
                for publisher in (info_pub, colour_info_pub):
                    info = CameraInfo(width=w, height=h, k=k, distortion_model="plumb_bob")
                    info.header.stamp, info.header.frame_id = stamp, frame
                    publisher.publish(info)
            sent += 1
            if sent % 50 == 0:
                print(f"camera: {sent} frames", flush=True)
            time.sleep(max(0.0, start + sent * period - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
