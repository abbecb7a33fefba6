// Issue 13, item 11: pgjdbc's own prepared-statement path. After
// prepareThreshold executions pgjdbc names the statement on the server and
// sends Bind/Execute without a Describe; with binaryTransfer it also asks
// for binary results. Each row is printed as one line, so the Rust test can
// compare a run through Custody with a direct one.
// Usage: java -cp postgresql.jar JdbcCheck.java URL USER PASSWORD
import java.sql.*;
import java.util.Properties;

public class JdbcCheck {
    public static void main(String[] args) throws Exception {
        for (String mode : new String[] {"text", "binary"}) {
            Properties p = new Properties();
            p.setProperty("user", args[1]);
            p.setProperty("password", args[2]);
            p.setProperty("sslmode", "disable");
            p.setProperty("prepareThreshold", "5");
            p.setProperty("binaryTransfer", mode.equals("binary") ? "true" : "false");
            try (Connection c = DriverManager.getConnection(args[0], p)) {
                run(c, mode);
            }
        }
    }

    static void run(Connection c, String mode) throws SQLException {
        String sql = "select id, name, email, ssn, addr, seen from jdbc_people where id <= ? order by id";
        try (PreparedStatement s = c.prepareStatement(sql)) {
            for (int i = 1; i <= 8; i++) {
                s.setInt(1, 3);
                try (ResultSet r = s.executeQuery()) {
                    while (r.next()) {
                        System.out.println(mode + " " + i + ": " + r.getInt(1) + "|" + r.getString(2) + "|"
                                + r.getString(3) + "|" + r.getString(4) + "|" + r.getString(5) + "|"
                                + r.getTimestamp(6));
                    }
                }
            }
        }
        // A cursor: fetchSize in a transaction makes pgjdbc Execute the same
        // portal again and again (PortalSuspended between the batches).
        c.setAutoCommit(false);
        try (PreparedStatement s = c.prepareStatement(sql)) {
            s.setFetchSize(1);
            for (int i = 1; i <= 6; i++) {
                s.setInt(1, 3);
                try (ResultSet r = s.executeQuery()) {
                    while (r.next()) {
                        System.out.println(mode + " fetch" + i + ": " + r.getInt(1) + "|" + r.getString(2) + "|"
                                + r.getString(3) + "|" + r.getString(4) + "|" + r.getString(5) + "|"
                                + r.getTimestamp(6));
                    }
                }
            }
        }
        c.commit();
        c.setAutoCommit(true);
        // Two statements in one string: pgjdbc sends both in one pipeline.
        try (Statement s = c.createStatement()) {
            for (int i = 1; i <= 6; i++) {
                s.execute("select id, name, email, ssn, addr, seen from jdbc_people where id = 1; select id, name, email, ssn, addr, seen from jdbc_people where id = 2");
                do {
                    try (ResultSet r = s.getResultSet()) {
                        while (r.next()) {
                            System.out.println(mode + " multi" + i + ": " + r.getInt(1) + "|" + r.getString(2) + "|"
                                    + r.getString(3) + "|" + r.getString(4) + "|" + r.getString(5) + "|"
                                    + r.getTimestamp(6));
                        }
                    }
                } while (s.getMoreResults());
            }
        }
        // A second named statement on the same connection, past its threshold too.
        try (PreparedStatement s = c.prepareStatement("select count(*), max(name) from jdbc_people where id > ?")) {
            for (int i = 1; i <= 7; i++) {
                s.setInt(1, 0);
                try (ResultSet r = s.executeQuery()) {
                    r.next();
                    System.out.println(mode + " count " + i + ": " + r.getLong(1) + "|" + r.getString(2));
                }
            }
        }
    }
}
