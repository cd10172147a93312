"""Kafka's ACL API through kafka-python's KafkaAdminClient, a second
protocol stack nobody here wrote: ADMIN (a super user) lists, creates and
deletes ACLs; APP, without a right on the cluster, may do none of it.
Prints how many ACLs ADMIN saw first.

    kafka_python_acls.py BOOTSTRAP ADMIN APP PASSWORD
"""
import json
import sys

from kafka import KafkaAdminClient
from kafka.admin import (ACL, ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType,
                         ResourcePattern, ResourcePatternFilter, ResourceType)
from kafka.errors import ClusterAuthorizationFailedError

from checks import check, fail


def client(bs, user, password):
    return KafkaAdminClient(bootstrap_servers=bs, security_protocol="SASL_PLAINTEXT",
                            sasl_mechanism="SCRAM-SHA-256", sasl_plain_username=user,
                            sasl_plain_password=password)


def main():
    bs, admin_user, app_user, password = sys.argv[1:5]
    everything = ACLFilter(principal=None, host="*", operation=ACLOperation.ANY,
                           permission_type=ACLPermissionType.ANY,
                           resource_pattern=ResourcePatternFilter(ResourceType.ANY, None,
                                                                  ACLResourcePatternType.ANY))
    admin = client(bs, admin_user, password)
    before, error = admin.describe_acls(everything)
    check(error.errno == 0, f"admin's DescribeAcls: {error}")
    grant = ACL(principal=f"User:{app_user}", host="*", operation=ACLOperation.DESCRIBE,
                permission_type=ACLPermissionType.ALLOW,
                resource_pattern=ResourcePattern(ResourceType.GROUP, "kp-",
                                                 ACLResourcePatternType.PREFIXED))
    created = admin.create_acls([grant])
    check(created["failed"] == [] and len(created["succeeded"]) == 1, f"CreateAcls: {created}")
    after, _ = admin.describe_acls(everything)
    check(len(after) == len(before) + 1, f"DescribeAcls after CreateAcls: {after}")

    app = client(bs, app_user, password)
    try:
        app.describe_acls(everything)
        fail("app listed the ACLs")
    except ClusterAuthorizationFailedError:
        pass
    refused = app.create_acls([grant])
    # kafka-python lists each refused ACL as its error class.
    check(refused["succeeded"] == [] and refused["failed"] == [ClusterAuthorizationFailedError],
          f"app's CreateAcls: {refused}")

    only_that = ACLFilter(principal=f"User:{app_user}", host="*", operation=ACLOperation.DESCRIBE,
                          permission_type=ACLPermissionType.ALLOW,
                          resource_pattern=ResourcePatternFilter(ResourceType.GROUP, "kp-",
                                                                 ACLResourcePatternType.PREFIXED))
    deleted = admin.delete_acls([only_that])
    matched = [acl for (_, acls, _) in deleted for acl in acls]
    check(len(matched) == 1, f"DeleteAcls: {deleted}")
    final, _ = admin.describe_acls(everything)
    check(len(final) == len(before), f"DescribeAcls after DeleteAcls: {final}")
    print(json.dumps({"ok": True, "acls": len(before)}))


if __name__ == "__main__":
    main()
