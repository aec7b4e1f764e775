# mailsift: a message the user moves or copies out of Junk is their "not spam" report,
# unless it goes to Trash: deleting junk says nothing about it.
#
# Run by IMAPSieve (imapsieve_mailbox2_* in 90-mailsift.conf) as the user; the message
# goes to `mailsift-report ham --user ADDRESS` (ADDRESS: the IMAP login).
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.mailbox" "*" {
  set "mailbox" "${1}";
}

# The destination folder. Add your clients' other names for the trash here, e.g.
# ["Trash", "Deleted Items", "Deleted Messages"].
if string "${mailbox}" ["Trash"] {
  stop;
}

if environment :matches "imap.user" "*" {
  set "username" "${1}";
}

pipe :copy "mailsift-report" ["ham", "--user", "${username}"];
